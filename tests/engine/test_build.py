"""The extension builds and reports how it was built."""

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
