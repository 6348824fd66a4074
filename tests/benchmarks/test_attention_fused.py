"""benchmarks/attention_fused.py: both attentions run and agree."""
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from benchmarks import attention_fused  # noqa: E402


def test_fused_and_exported_attention_agree(capsys):
    assert attention_fused.main(["--batch", "2", "--tokens", "64", "--channels", "32", "--heads", "4", "--runs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:2]] == ["unfused", "fused"]
    assert float(out[2].rsplit(" ", 1)[1]) <= 1e-5


def test_channels_must_split_into_heads(capsys):
    with pytest.raises(SystemExit):
        attention_fused.main(["--channels", "30", "--heads", "4"])
    assert "multiple of --heads" in capsys.readouterr().err
