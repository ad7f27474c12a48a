import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_proto_sources():
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_importable_name_shadows_a_common_package():
    import trustgen

    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert top == {"trustgen", "tests"}, top  # node/, consensus/, proto/ live inside trustgen
    assert Path(trustgen.__file__).parent == ROOT / "trustgen"
