"""`extract --parse` and `--exif`: recorded in the sources' provenance, and a resume with others is refused."""
from __future__ import annotations

import pytest
from _extract_helpers import fi_root, tiny_dir  # noqa: F401  (fixtures)

from vea_bench.cache import FeatureCache
from vea_bench.errors import CacheError, ConfigError
from vea_bench.extract import extract
from vea_bench.models.base import GenerationOptions, LoadOptions


@pytest.fixture(scope="module")
def index(fi_root):  # noqa: F811
    from vea_bench.datasets import load_dataset

    return load_dataset("fi", fi_root)


def test_exif_mode_is_recorded_and_a_change_is_refused(tmp_path, index, tiny_dir) -> None:  # noqa: F811
    path = tmp_path / "c.h5"
    extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], limit=1, num_workers=0)
    with FeatureCache.open(path) as c:
        prov = c.source("teacher", "vit-fi").provenance
    assert prov["image_decoding"]["exif_orientation"] == "apply"
    with pytest.raises(CacheError, match=r"other settings \(image_decoding\)"):
        extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], exif="ignore", num_workers=0)
    with pytest.raises(ConfigError, match="unknown EXIF mode"):
        extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], exif="sideways", num_workers=0)
    extract(index, tmp_path / "ref.h5", vlm=None, teachers=[tiny_dir["teacher"]], exif="ignore", limit=1,
            num_workers=0)
    with FeatureCache.open(tmp_path / "ref.h5") as c:
        assert c.source("teacher", "vit-fi").provenance["image_decoding"]["exif_orientation"] == "ignore"


def test_parse_mode_is_recorded_and_a_change_is_refused(tmp_path, index, tiny_dir) -> None:  # noqa: F811
    from vea_bench.models import load_vlm

    opts = LoadOptions(str(tiny_dir["qwen"]), device="cpu")
    backend = load_vlm(opts)
    gen = GenerationOptions(max_new_tokens=4)
    path = tmp_path / "v.h5"
    extract(index, path, vlm=opts, vlm_backend=backend, generation=gen, limit=1, num_workers=0)
    with FeatureCache.open(path) as c:
        key = c.source_keys("vlm")[0]
        prov = c.source("vlm", key).provenance
        parse = c.read("vlm", key, "test", ["parse"], allow_incomplete=True)["parse"]
    assert prov["parse"]["mode"] == "strict" and prov["parser"].endswith("/2")
    # A random tiny model never writes the dictionary form: under the strict default nothing is read.
    assert set(parse[:1]) <= {"unparsed", "out-of-space", "empty"}
    with pytest.raises(CacheError, match=r"other settings \(parse\)"):
        extract(index, path, vlm=opts, vlm_backend=backend, generation=gen, parse="lenient", num_workers=0)
    with pytest.raises(ConfigError, match="unknown parse mode"):
        extract(index, path, vlm=opts, vlm_backend=backend, generation=gen, parse="guess", num_workers=0)
    extract(index, tmp_path / "l.h5", vlm=opts, vlm_backend=backend, generation=gen, parse="lenient", limit=1,
            num_workers=0)
    with FeatureCache.open(tmp_path / "l.h5") as c:
        assert c.source("vlm", key).provenance["parse"]["mode"] == "lenient"
