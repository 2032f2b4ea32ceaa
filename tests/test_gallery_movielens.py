"""MovieLens-100K: fetched on first use into a cache outside the repository (its licence
forbids redistribution); these tests skip when it cannot be obtained."""
import numpy as np
import pytest

from engine import datasets
from engine.fit import Fitter


def test_missing_data_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_CACHE", str(tmp_path))
    with pytest.raises(datasets.DataUnavailable, match=r"pip download --no-deps recbole==1\.2\.1"):
        datasets.movielens_model(download=False)


@pytest.fixture(scope="module")
def raw():
    try:
        return datasets.movielens_raw()
    except datasets.DataUnavailable as e:
        pytest.skip(f"MovieLens-100K not available: {e}")


def test_raw_data_is_ml100k(raw):
    ratings, genres = raw
    assert ratings.shape == (100000, 3) and genres.shape == (1682, 18)
    assert ratings[0].tolist() == [196, 242, 3]                      # u.data's first row
    assert np.bincount(ratings[:, 2]).tolist() == [0, 6110, 11370, 27145, 34174, 21201]
    counts = dict(zip(datasets.GENRES, genres.sum(0).tolist()))      # u.item's genre flags
    assert counts["Drama"] == 725 and counts["Comedy"] == 505 and counts["Action"] == 251
    assert counts["Film-Noir"] == 24 and counts["Fantasy"] == 22 and counts["Western"] == 27
    assert len(np.unique(ratings[:, 0])) == 943 and len(np.unique(ratings[:, 1])) == 1682


def test_model_binarises_and_has_distinct_films(raw):
    ratings, genres = raw
    m, test = datasets.movielens(n_users=60, n_films=5, seed=0)
    users, train, held = datasets.movielens_selection(ratings, genres, 60, 5, 0)
    y, x = m.data["y"], m.data["x"]
    assert y.shape == (60, 5) and x.shape == (5, 18) and m.data_plates["x"] == ["films"]
    rating = {(u - 1, f - 1): r for u, f, r in ratings.tolist()}
    for data, films in ((y, train), (test["y"], held)):
        for i, u in enumerate(users):
            for j, f in enumerate(films):
                r = rating.get((u, f))
                assert (np.isnan(data[i, j]) if r is None else data[i, j] == (1.0 if r >= 4 else 0.0))
        seen = data[np.isfinite(data)]
        assert set(np.unique(seen)) == {0.0, 1.0}                      # both classes occur
    assert np.array_equal(x, genres[train]) and np.array_equal(test["x"], genres[held])
    rows = {r.tobytes() for r in np.concatenate([x, test["x"]])}
    assert len(rows) == 10 and (x.sum(1) > 0).all()                   # films' features differ
    assert set(train).isdisjoint(held)


def test_fit_and_predict(raw):
    m, test = datasets.movielens(n_users=40, n_films=5, seed=1)
    f = Fitter(m, "qem", K=5, seed=0, device="cpu")
    for step in f.run(3):
        assert np.isfinite(step.elbo)
    r = f.result(test_data=test)
    assert np.isfinite(r.predictive_log_likelihood) and r.latents["z"]["mean"].shape == (40, 18)
