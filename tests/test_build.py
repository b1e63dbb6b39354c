"""The extension builds, reports how it was built, and its dense matmul agrees with numpy."""

import numpy as np
import pytest

import rasp_compiler
from rasp_compiler import _engine


def test_version_matches_package() -> None:
    assert _engine.__version__ == rasp_compiler.__version__
    assert _engine.build_info()["version"] == rasp_compiler.__version__


def test_build_info_is_consistent() -> None:
    info = _engine.build_info()
    assert info["threads"] in ("openmp", "std::thread")
    assert info["default_threads"] >= 1
    assert isinstance(info["cuda_built"], bool)
    # cuda_available() means "built AND a device is visible"
    assert _engine.cuda_available() == (info["cuda_built"] and info["cuda_devices"] > 0)


@pytest.mark.parametrize(
    "m,k,n", [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 300, 130), (129, 257, 65), (0, 4, 3), (4, 0, 3)]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_matches_numpy(m: int, k: int, n: int, threads: int) -> None:
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    a[rng.random((m, k)) < 0.5] = 0.0  # sparse rows exercise the zero-skipping path
    got = _engine.matmul(a, b, threads=threads)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1, k) ** 0.5)


def test_matmul_rejects_wrong_dtype() -> None:
    a = np.ones((2, 3), dtype=np.float64)
    b = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        _engine.matmul(a, b)


def test_matmul_rejects_inner_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="inner dimensions"):
        _engine.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))


def test_matmul_rejects_wrong_rank_and_layout() -> None:
    with pytest.raises(ValueError, match="2-D"):
        _engine.matmul(np.ones((2, 3, 1), np.float32), np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        _engine.matmul(np.ones((3, 2), np.float32).T, np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _engine.matmul("not an array", np.ones((3, 2), np.float32))
