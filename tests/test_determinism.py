import os

import torch

from trustgen.engines.determinism import configure


def test_deterministic_flags_are_set_and_reported():
    prof = configure("cpu", deterministic=True, threads=2)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert prof.threads == 2 and prof.deterministic
    relaxed = configure("cpu", deterministic=False, threads=2)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cuda.matmul.allow_tf32
    assert not relaxed.same_numerics(prof)
    assert configure("cpu", deterministic=True, threads=2).same_numerics(prof)


def test_profile_records_dtype_and_versions():
    prof = configure("cpu", dtype="bfloat16")
    assert prof.dtype == "bfloat16"
    assert prof.versions["torch"] == torch.__version__
    configure("cpu")  # restore defaults for other tests
