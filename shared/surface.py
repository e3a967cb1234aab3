"""The cortical surface geometry of the fMRI target: fsaverage5 and its ico4 subset.

fsaverage meshes are nested subdivisions of an icosahedron, so the first vertices of every
hemisphere of a finer mesh are the coarser mesh: fsaverage5 (ico5) has 10242 vertices per
hemisphere, and its first 2562 are ico4. The fMRI target is ico4; fMRIPrep writes, and
synthesis writes back, fsaverage5. nilearn ships fsaverage5 with its package data, so the
meshes load offline (nothing is downloaded) and are read once per process (``load_fsaverage5``).

Point order, everywhere: left hemisphere then right, each in fsaverage vertex order. ico4 is
``[5124]`` points (left ``0..2561``, right ``2562..5123``), named ``L0``..``L2561``,
``R0``..``R2561``; fsaverage5 is ``[20484]`` (left ``0..10241``, right ``10242..20483``).
Positions are millimetres on the fsaverage5 pial surface (fsaverage surface RAS, MNI305).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

#: Hemisphere names as nilearn's meshes spell them, in point order.
HEMISPHERES = ("left", "right")
#: Vertices per hemisphere of ico4 (the first of every fsaverage hemisphere).
ICO4_PER_HEMI = 2562
#: Vertices per hemisphere of fsaverage5.
FSAVERAGE5_PER_HEMI = 10242
#: ico4 points, both hemispheres: the fMRI target.
ICO4_POINTS = 2 * ICO4_PER_HEMI
#: fsaverage5 vertices, both hemispheres.
FSAVERAGE5_POINTS = 2 * FSAVERAGE5_PER_HEMI
#: Vertices per hemisphere of the fsaverage meshes -> mesh name; ico4 is the first 2562 of any.
FSAVERAGE_VERTICES = {
    ICO4_PER_HEMI: "fsaverage4",
    FSAVERAGE5_PER_HEMI: "fsaverage5",
    40962: "fsaverage6",
    163842: "fsaverage",
}


def vertex_normals(coords: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a closed hemisphere mesh, oriented outward (away from its centroid).

    Parameters
    ----------
    coords : np.ndarray
        ``[n_vertices, 3]`` vertex positions.
    faces : np.ndarray
        ``[n_faces, 3]`` vertex indices of each triangle.

    Returns
    -------
    np.ndarray
        ``[n_vertices, 3]`` unit normals.
    """
    fn = np.cross(coords[faces[:, 1]] - coords[faces[:, 0]], coords[faces[:, 2]] - coords[faces[:, 0]])
    vn = np.zeros_like(coords)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True)
    if np.mean(np.sum(vn * (coords - coords.mean(axis=0)), axis=1)) < 0:
        vn = -vn
    return vn


@functools.lru_cache(maxsize=1)
def load_fsaverage5() -> Any:
    """nilearn's fsaverage5 meshes (``pial``, ``white_matter``, ``inflated``, ``sphere``, ...,
    each with ``.parts['left'|'right']``); shipped with nilearn, loaded once. Read only."""
    from nilearn import datasets

    return datasets.load_fsaverage("fsaverage5")


def load_ico4_positions() -> np.ndarray:
    """ico4 vertex positions ``[5124, 3]`` float64 (mm): the first 2562 vertices of each
    fsaverage5 pial hemisphere, left then right. A new array on every call."""
    pial = load_fsaverage5()["pial"]
    return np.concatenate(
        [np.asarray(pial.parts[h].coordinates[:ICO4_PER_HEMI], dtype=np.float64) for h in HEMISPHERES]
    )


@functools.lru_cache(maxsize=1)
def ico4_names() -> tuple[str, ...]:
    """ico4 point names in point order: ``L0``..``L2561``, ``R0``..``R2561``."""
    return tuple(f"{h[0].upper()}{i}" for h in HEMISPHERES for i in range(ICO4_PER_HEMI))


# ----------------------------------------------------------------------------------------------
# ico4 -> fsaverage5


@functools.lru_cache(maxsize=1)
def ico4_to_fsaverage5() -> sparse.csr_matrix:
    """The ``[20484, 5124]`` matrix that upsamples ico4 values to fsaverage5 (left, then right).

    The first 2562 vertices of an fsaverage5 hemisphere are ico4 and keep their values; every
    other vertex takes the mean of its ico4 neighbours on the mesh (the two ends of the ico4
    edge it subdivides).
    """
    from scipy import sparse

    sphere = load_fsaverage5()["sphere"]
    blocks = [
        _upsampling(np.asarray(sphere.parts[h].coordinates), np.asarray(sphere.parts[h].faces)) for h in HEMISPHERES
    ]
    return sparse.block_diag(blocks, format="csr")


def _upsampling(coordinates: np.ndarray, faces: np.ndarray) -> sparse.csr_matrix:
    from scipy import sparse

    n = len(coordinates)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)  # each undirected edge once, low index first
    links = edges[(edges[:, 0] < ICO4_PER_HEMI) & (edges[:, 1] >= ICO4_PER_HEMI)]  # (ico4, finer) neighbours
    rows = np.concatenate([np.arange(ICO4_PER_HEMI), links[:, 1]])
    cols = np.concatenate([np.arange(ICO4_PER_HEMI), links[:, 0]])
    orphans = np.setdiff1d(np.arange(n), rows)
    if orphans.size:  # not on fsaverage5; a finer mesh's vertices fall back to the nearest ico4 vertex
        unit = coordinates / np.linalg.norm(coordinates, axis=1, keepdims=True)
        nearest = np.argmax(unit[orphans] @ unit[:ICO4_PER_HEMI].T, axis=1)
        rows, cols = np.concatenate([rows, orphans]), np.concatenate([cols, nearest])
    counts = np.bincount(rows, minlength=n)
    return sparse.csr_matrix((1.0 / counts[rows], (rows, cols)), shape=(n, ICO4_PER_HEMI))


def upsample_ico4(data: np.ndarray) -> np.ndarray:
    """ico4 values (left then right) upsampled to fsaverage5.

    Parameters
    ----------
    data : np.ndarray
        ``[5124, ...]`` values on the ico4 points.

    Returns
    -------
    np.ndarray
        ``[20484, ...]`` float32.

    Raises
    ------
    ValueError
        ``data`` does not have 5124 rows.
    """
    data = np.asarray(data)
    matrix = ico4_to_fsaverage5()
    if data.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected {matrix.shape[1]} ico4 values (left then right), got {data.shape[0]}")
    flat = data.reshape(data.shape[0], -1)
    return np.asarray(matrix @ flat, dtype=np.float32).reshape(matrix.shape[0], *data.shape[1:])


# ----------------------------------------------------------------------------------------------
# geometric eigenmodes: a public basis of smooth cortical patterns


@functools.lru_cache(maxsize=4)
def cortical_eigenmodes(per_hemisphere: int) -> np.ndarray:
    """The first ``per_hemisphere`` geometric eigenmodes of each ico4 hemisphere, ``[5124, 2k]``.

    Eigenfunctions of the Laplace-Beltrami operator of the midthickness surface (the mean of
    nilearn's fsaverage5 pial and white meshes at the ico4 vertices; cotangent weights, lumped
    vertex areas), lowest spatial frequency first; the ico4 triangles are the convex hull of the
    ico4 sphere vertices. They depend on the mesh alone, never on data, so statistics expressed
    in them are a data-independent reduction (Pang et al. 2023 use the same modes to model
    cortical activity). Left-hemisphere modes fill columns ``0..k-1`` and are zero on the right;
    right-hemisphere modes fill ``k..2k-1``. The columns are orthonormal (Gram-Schmidt in
    frequency order, so the first ``j`` span the first ``j`` eigenmodes). Read only.

    Parameters
    ----------
    per_hemisphere : int
        Modes per hemisphere (the first is constant over the hemisphere).

    Returns
    -------
    np.ndarray
        ``[5124, 2 * per_hemisphere]`` float64.

    Raises
    ------
    ValueError
        ``per_hemisphere`` is not between 1 and 256.
    """
    from scipy import sparse
    from scipy.sparse.linalg import eigsh
    from scipy.spatial import ConvexHull

    if not 1 <= per_hemisphere <= 256:
        raise ValueError(f"per_hemisphere = {per_hemisphere}: choose 1 to 256 modes per hemisphere")
    mesh = load_fsaverage5()
    blocks = []
    for hemi in HEMISPHERES:
        sphere = np.asarray(mesh["sphere"].parts[hemi].coordinates[:ICO4_PER_HEMI], dtype=np.float64)
        faces = ConvexHull(sphere / np.linalg.norm(sphere, axis=1, keepdims=True)).simplices
        mid = (
            sum(
                np.asarray(mesh[s].parts[hemi].coordinates[:ICO4_PER_HEMI], dtype=np.float64)
                for s in ("pial", "white_matter")
            )
            / 2
        )
        stiffness, mass = _cotangent_laplacian(mid, faces)
        values, vectors = eigsh(stiffness, k=per_hemisphere, M=sparse.diags(mass), sigma=-1e-8, which="LM")
        # orthonormal in R^n (not only mass-orthogonal), lowest frequency first: Gram-Schmidt keeps
        # the span of the first j modes for every j, and makes Y @ modes @ modes.T a projection
        vectors, _ = np.linalg.qr(vectors[:, np.argsort(values)])
        vectors *= np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(per_hemisphere)])  # a fixed sign
        blocks.append(vectors)
    modes = np.zeros((ICO4_POINTS, 2 * per_hemisphere))
    modes[:ICO4_PER_HEMI, :per_hemisphere] = blocks[0]
    modes[ICO4_PER_HEMI:, per_hemisphere:] = blocks[1]
    modes.setflags(write=False)
    return modes


def _cotangent_laplacian(coords: np.ndarray, faces: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The cotangent stiffness matrix and lumped (one third of adjacent triangles) vertex areas."""
    from scipy import sparse

    n = len(coords)
    rows, cols, weights = [], [], []
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):  # the angle at vertex a faces edge (b, c)
        u, v = coords[faces[:, b]] - coords[faces[:, a]], coords[faces[:, c]] - coords[faces[:, a]]
        cot = np.einsum("ij,ij->i", u, v) / np.maximum(np.linalg.norm(np.cross(u, v), axis=1), 1e-12)
        rows += [faces[:, b], faces[:, c]]
        cols += [faces[:, c], faces[:, b]]
        weights += [0.5 * cot, 0.5 * cot]
    adjacency = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    stiffness = sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    triangle = 0.5 * np.linalg.norm(
        np.cross(coords[faces[:, 1]] - coords[faces[:, 0]], coords[faces[:, 2]] - coords[faces[:, 0]]), axis=1
    )
    area = np.zeros(n)
    for k in range(3):
        np.add.at(area, faces[:, k], triangle / 3)
    return stiffness.tocsr(), area
