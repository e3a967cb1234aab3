import numpy as np

from fedneurogen.shared.splits import split_subjects


def test_split_is_disjoint_complete_and_deterministic():
    subjects = np.repeat([f"sub-{i:02d}" for i in range(10)], 5)
    a = split_subjects(subjects, seed=3)
    b = split_subjects(subjects, seed=3)
    assert a == b
    assert set(a.train) | set(a.val) | set(a.test) == set(subjects)
    assert not (set(a.train) & set(a.test)) and not (set(a.val) & set(a.test)) and not (set(a.train) & set(a.val))
    assert len(a.test) == 2 and len(a.val) == 2
    train, val, test = a.masks(subjects)
    assert (train.astype(int) + val + test == 1).all()
    assert split_subjects(subjects, seed=4) != a


def test_small_sites():
    three = split_subjects(["s1", "s2", "s3"], seed=0)
    assert len(three.train) == len(three.val) == len(three.test) == 1
    two = split_subjects(["s1", "s2"], seed=0)
    assert two.train == ("s1", "s2") and two.test == ()
