"""The TorchX components validate and produce the torchrun command crossrank expects."""

from __future__ import annotations

from torchx.components.component_test_base import ComponentTestCase

from torchx_components import crossrank


class TrainComponentTest(ComponentTestCase):
    def test_validates(self) -> None:
        self.validate(crossrank, "train")

    def test_app_def(self) -> None:
        app = crossrank.train("train.epochs=2", config="configs/ml1m.yaml", j="2x4", gpu=8, memMB=4096)
        role = app.roles[0]
        cmd = role.args[1]
        assert role.entrypoint == "bash" and role.num_replicas == 2
        assert "torchrun" in cmd and "--nproc_per_node 4" in cmd and "--nnodes 2" in cmd
        assert "-m crossrank.pipeline.cli train --config configs/ml1m.yaml --set train.epochs=2" in cmd
        assert role.resource.gpu == 8 and role.resource.memMB == 4096

    def test_single_node_uses_a_free_port(self) -> None:
        cmd = crossrank.train(j="1x2").roles[0].args[1]
        assert "--rdzv_endpoint localhost:0" in cmd and "--set" not in cmd


class ScoreAndEvaluateComponentTest(ComponentTestCase):
    def test_validate(self) -> None:
        self.validate(crossrank, "score")
        self.validate(crossrank, "evaluate")

    def test_score_command(self) -> None:
        cmd = crossrank.score("runs/x", "in/", "out/", passthrough="user_id,label", j="2x8").roles[0].args[1]
        assert (
            "-m crossrank.pipeline.cli score --checkpoint runs/x --input in/ --output out/ --batch-size 4096"
            in cmd
        )
        assert "--passthrough user_id,label" in cmd and "--nnodes 2" in cmd

    def test_evaluate_command(self) -> None:
        cmd = crossrank.evaluate("runs/x", "data/test", ranking="data/ranking").roles[0].args[1]
        assert (
            "-m crossrank.pipeline.cli evaluate --checkpoint runs/x --data data/test --batch-size 4096 --ranking data/ranking"
            in cmd
        )
