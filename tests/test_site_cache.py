"""A process that serves many simulated sites in turn (a Ray site actor) keeps the most recently
used ``MAX_SITES_IN_MEMORY`` loaded and reloads the others on their turn, the same windows."""

from __future__ import annotations

import numpy as np

from fedneurogen.client import site


def test_sites_beyond_the_limit_are_released_and_reload_the_same(small_fmri_sites, tmp_path, monkeypatch):
    monkeypatch.setattr(site, "_SITES", {})
    monkeypatch.setattr(site, "MAX_SITES_IN_MEMORY", 1)
    first, second = small_fmri_sites
    loaded = site.load(first, seed=0, max_windows=8, cache_dir=str(tmp_path))
    assert site.load(first, seed=0, max_windows=8, cache_dir=str(tmp_path)) is loaded  # kept while it is the last
    site.load(second, seed=0, max_windows=8, cache_dir=str(tmp_path))
    assert len(site._SITES) == 1  # the first was released
    again = site.load(first, seed=0, max_windows=8, cache_dir=str(tmp_path))
    assert again is not loaded
    np.testing.assert_array_equal(again.train.eeg, loaded.train.eeg)
    np.testing.assert_array_equal(again.val.target, loaded.val.target)
