import numpy as np

from latentfuse.model.data.prompts import corpus
from latentfuse.model.data.samples import SAMPLES_DIR, sample_pairs
from latentfuse.model.data.tasks import task_degradations
from latentfuse.model.image_io import read_image


def test_shipped_samples_are_small_varied_and_indexed():
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 1.5e6
    words = set(corpus())
    for task in ("vif", "mef", "mff"):
        pairs = sample_pairs(task)
        assert len(pairs) == 3
        shapes = set()
        for p in pairs:
            a, b = read_image(p.a), read_image(p.b)
            assert a.shape[:2] == b.shape[:2] and max(a.shape[:2]) <= 256
            shapes.add(a.shape[:2])
            assert p.degradations and set(p.degradations) <= set(task_degradations(task))
            assert p.prompt in words
        assert len(shapes) == 3 and any(h != w for h, w in shapes)
    assert read_image(sample_pairs("vif")[0].b).ndim == 2  # infrared is single-channel


def test_samples_regenerate_identically(tmp_path):
    from latentfuse.model.data.make_samples import make_samples

    make_samples(tmp_path)
    for task in ("vif",):
        for p in sample_pairs(task):
            np.testing.assert_array_equal(read_image(tmp_path / task / p.a.name), read_image(p.a))
