"""The runtime needs neither torch nor diffusers nor cmrt.build: prove it in a process where importing torch fails."""
import subprocess
import sys
import textwrap


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    blocker = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'diffusers', 'tensorrt', 'transformers'):
                    raise ImportError('blocked for this test: ' + name)
                return None
        sys.meta_path.insert(0, _Block())
        """
    )
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_cmrt_pulls_in_no_torch():
    r = run_without_torch(
        """
        import sys, cmrt, cmrt.runtime, cmrt.engine.manifest, cmrt.engine.models, cmrt.cli
        from cmrt.runtime import scheduler, pipeline, loading
        bad = [m for m in ('torch', 'diffusers', 'tensorrt') if m in sys.modules]
        assert not bad, bad
        print('ok')
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_load_and_generate_without_torch(small_models):
    engine = small_models["cond"][1]
    r = run_without_torch(
        f"""
        import cmrt, numpy as np
        pipe = cmrt.load({str(engine)!r})
        images = pipe(batch_size=2, timesteps=[22, 0], seed=0, output_type='np').images
        assert images.shape == (2, 16, 16, 3), images.shape
        img = cmrt.generate({str(engine)!r}, seed=1).images[0]
        import sys
        build = [m for m in sys.modules if m.startswith(('cmrt.build', 'cmrt.cli')) or m.split('.')[0] in ('torch', 'diffusers', 'onnx')]
        assert not build, build
        print('ok', img.size)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok (16, 16)"


def test_cli_generate_without_torch(small_models, tmp_path):
    engine = small_models["uncond"][1]
    out = tmp_path / "grid.png"
    r = run_without_torch(
        f"""
        import sys
        from cmrt.cli import main
        rc = main(['generate', {str(engine)!r}, '--batch', '4', '--timesteps', '17,0', '--seed', '3', '--out', {str(out)!r}])
        build = [m for m in sys.modules if m.startswith('cmrt.build')]
        assert not build, build
        raise SystemExit(rc)
        """
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size == (2 + 2 * 18, 2 + 2 * 18)
