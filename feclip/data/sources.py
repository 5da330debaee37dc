"""Where each data set of FE-CLIP's tables comes from, under which licence, and how it is laid out.

FE-CLIP's Tables 1-2 (Gong et al., ICCV 2025, Section 4.1) use ten data sets: MVTec AD, VisA,
MPDD, BTAD, DAGM, DTD-Synthetic (industrial), BrainMRI, Br35H (medical, image level, Table 1)
and CVC-ClinicDB, Kvasir (medical, pixel level, Table 2). The paper follows AnomalyCLIP's
protocol, so the medical and the smaller industrial sets are taken from the sources
AnomalyCLIP's README links (github.com/zqhang/AnomalyCLIP).

Only three have a public direct download with a published checksum: MVTec AD, VisA and BTAD.
Their URLs and SHA-256 sums are anomalib's (``DOWNLOAD_INFO`` in
``src/anomalib/data/datamodules/image/{mvtecad,visa,btech}.py`` of open-edge-platform/anomalib,
SHA-256 since commit 7ac7a73 "Replace md5 with sha-256"; the MVTec AD URL as updated in
commit 43ea940, July 2026, with the hash unchanged). The others are behind a browser-only
link (OneDrive, Google Drive, Kaggle, figshare): :class:`DataSource` records the page and
the manual step, and ``feclip download NAME --from-archive FILE`` prepares what the user
downloaded.

Every prepared set lands in ``<root>/<name>`` in a layout one of our readers reads:

* ``mvtec`` kind (:class:`~feclip.data.MVTecAD`): MVTec AD, BTAD, MPDD and DTD-Synthetic
  as released; DAGM, CVC-ClinicDB and Kvasir converted (test split only for the polyp sets,
  whose every image is anomalous);
* ``visa`` kind (:class:`~feclip.data.VisA`): VisA as released, ``split_csv/1cls.csv`` at
  the root;
* ``folder`` kind (:class:`~feclip.data.FolderDataset`): BrainMRI and Br35H, image-level
  labels only (``good/`` and ``abnormal/``).

A preparer gets the folder an archive was extracted into and the (not yet existing) folder
to create; it moves files within one staging folder, so preparing costs no copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataSource",
    "LayoutError",
    "SOURCES",
    "binarize_mask",
    "check_layout",
    "get_source",
    "prepare_dagm",
    "prepare_image_folders",
    "prepare_mvtec_layout",
    "prepare_polyp",
    "prepare_visa",
]


def _list_images(directory: Path) -> list[Path]:
    """The reader's own image listing (:func:`feclip.data.base.list_images`), imported when first needed."""
    from feclip.data.base import list_images as list_reader_images  # the readers import torch

    return list_reader_images(directory)


CC_BY_NC_SA = "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/), non-commercial use only"
IGNORED_DIRS = ("__MACOSX",)  # macOS zip metadata, never data


class LayoutError(FileNotFoundError):
    """An extracted archive or a prepared folder does not have the layout its data set has."""


# --------------------------------------------------------------------------- finding folders


def _walk_dirs(root: Path) -> Iterator[Path]:
    """Every folder under ``root`` (``root`` included), shallowest first, by name within a depth."""
    level = [root]
    while level:
        yield from level
        level = sorted(child for parent in level for child in parent.iterdir()
                       if child.is_dir() and child.name not in IGNORED_DIRS)


def _find_dir(root: Path, matches: Callable[[Path], bool], what: str) -> Path:
    """The shallowest folder under ``root`` for which ``matches`` holds; ``LayoutError`` naming ``what`` if none."""
    for directory in _walk_dirs(root):
        if matches(directory):
            return directory
    raise LayoutError(f"no {what} inside the extracted archive ({root}); is it the right file?")


def _is_mvtec_root(directory: Path) -> bool:
    return any(child.is_dir() and ((child / "test").is_dir() or (child / "train").is_dir())
               for child in directory.iterdir())


def _child(directory: Path, name: str) -> Path | None:
    """``directory/name`` matched case-insensitively (archives differ in ``Test``/``test``)."""
    return next((c for c in directory.iterdir() if c.is_dir() and c.name.lower() == name.lower()), None)


# --------------------------------------------------------------------------- masks


def binarize_mask(source: Path, destination: Path) -> None:
    """Write ``source`` as a 0/255 single-channel PNG at ``destination``.

    JPEG masks (Kvasir) carry compression noise around 0 and 255, and our readers count any
    non-zero pixel as anomalous, so values above half the peak are kept. Masks stored as 0/1
    (peak 1) keep every non-zero pixel.
    """
    import numpy as np  # imported here so that `feclip download --help` loads no array library
    from PIL import Image

    values = np.asarray(Image.open(source))
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)
    peak = float(values.max()) if values.size else 0.0
    binary = values > (peak / 2 if peak > 1 else 0)
    destination.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(binary.astype(np.uint8) * 255).save(destination)


def _move_into(files: list[Path], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in files:
        path.rename(directory / path.name)


# --------------------------------------------------------------------------- preparers


def prepare_mvtec_layout(extracted: Path, destination: Path) -> None:
    """MVTec AD, BTAD, MPDD, DTD-Synthetic: move the folder holding ``<category>/{train,test}`` to ``destination``."""
    _find_dir(extracted, _is_mvtec_root, "folder of category folders with train/ or test/").rename(destination)


def prepare_visa(extracted: Path, destination: Path) -> None:
    """VisA as released: move the folder holding ``split_csv/1cls.csv`` to ``destination`` (our reader reads it as is)."""
    _find_dir(extracted, lambda d: (d / "split_csv" / "1cls.csv").is_file(), "split_csv/1cls.csv").rename(destination)


DAGM_CLASS = re.compile(r"^Class\d+$")


def prepare_dagm(extracted: Path, destination: Path) -> None:
    """DAGM 2007 (``ClassN/{Train,Test}/NNNN.PNG`` with ``Label/NNNN_label.PNG``) into the MVTec layout.

    An image with a label file is anomalous (defect type ``defect``; its mask goes to
    ``ground_truth/defect/NNNN_mask.png``), one without is normal. The train split keeps
    only normal images, as MVTec's does.
    """
    root = _find_dir(extracted, lambda d: any(DAGM_CLASS.match(c.name) for c in d.iterdir() if c.is_dir()),
                     "DAGM ClassN folders")
    for class_dir in sorted(c for c in root.iterdir() if c.is_dir() and DAGM_CLASS.match(c.name)):
        for phase, split in (("Train", "train"), ("Test", "test")):
            phase_dir = _child(class_dir, phase)
            if phase_dir is None:
                continue
            label_dir = _child(phase_dir, "Label")
            for image in _list_images(phase_dir):
                label = next(label_dir.glob(f"{image.stem}_label.*"), None) if label_dir else None
                if label is None:
                    _move_into([image], destination / class_dir.name / split / "good")
                elif split == "test":
                    _move_into([image], destination / class_dir.name / "test" / "defect")
                    binarize_mask(label, destination / class_dir.name / "ground_truth" / "defect" / f"{image.stem}_mask.png")
    check_layout(destination, "mvtec")


def prepare_image_folders(extracted: Path, destination: Path) -> None:
    """BrainMRI, Br35H (``yes/`` tumour, ``no/`` healthy) into ``destination/{abnormal,good}``.

    Image-level labels only: read with ``folder:<destination>``. Other folders (Br35H's
    unlabelled ``pred/``) are left out; where an archive holds the pair twice (BrainMRI's
    Kaggle archive), the shallowest pair is used.
    """
    pair = _find_dir(extracted, lambda d: _child(d, "yes") is not None and _child(d, "no") is not None,
                     "pair of yes/ and no/ folders")
    _move_into(_list_images(_child(pair, "no")), destination / "good")
    _move_into(_list_images(_child(pair, "yes")), destination / "abnormal")
    check_layout(destination, "folder")


def prepare_polyp(folder_names: tuple[str, ...]) -> Callable[[Path, Path], None]:
    """A preparer for a polyp set (``images/`` + ``masks/``) into MVTec layout, category ``polyp``, test only.

    Args:
        folder_names: Names the set's folder may have; AnomalyCLIP's figshare archive holds
            several sets side by side (``CVC-ClinicDB``, ``Kvasir``, ...), so the name picks one.
            When no folder has one of these names and the archive holds a single
            ``images/``+``masks/`` pair, that pair is used.
    """
    wanted = {name.lower() for name in folder_names}

    def prepare(extracted: Path, destination: Path) -> None:
        pairs = [d for d in _walk_dirs(extracted) if _child(d, "images") and _child(d, "masks")]
        named = [d for d in pairs if d.name.lower() in wanted]
        if not named and len(pairs) != 1:
            found = ", ".join(str(d.relative_to(extracted)) for d in pairs) or "none"
            raise LayoutError(f"no images/ + masks/ folder named one of {sorted(folder_names)} in {extracted} "
                              f"(pairs found: {found})")
        pair = (named or pairs)[0]
        masks = {m.stem: m for m in _list_images(_child(pair, "masks"))}
        images = _list_images(_child(pair, "images"))
        for image in images:
            if image.stem not in masks:
                raise LayoutError(f"no mask for {image} in {_child(pair, 'masks')}")
            binarize_mask(masks[image.stem], destination / "polyp" / "ground_truth" / "polyp" / f"{image.stem}_mask.png")
        _move_into(images, destination / "polyp" / "test" / "polyp")
        check_layout(destination, "mvtec")

    return prepare


# --------------------------------------------------------------------------- layout check


def check_layout(folder: Path, reader: str) -> None:
    """Raise :class:`LayoutError` unless ``folder`` has the layout the ``reader`` kind reads.

    A cheap check (no image is opened): ``mvtec``: a category folder with ``test/``;
    ``visa``: ``split_csv/1cls.csv``; ``folder``: ``good/`` or ``abnormal/`` with images.
    """
    if reader == "mvtec":
        ok = folder.is_dir() and any((c / "test").is_dir() for c in folder.iterdir() if c.is_dir())
        expected = "<category>/test/"
    elif reader == "visa":
        ok, expected = (folder / "split_csv" / "1cls.csv").is_file(), "split_csv/1cls.csv"
    elif reader == "folder":
        ok = any((folder / name).is_dir() and _list_images(folder / name) for name in ("good", "abnormal"))
        expected = "good/ or abnormal/ with images"
    else:
        raise ValueError(f"unknown reader kind {reader!r}")
    if not ok:
        raise LayoutError(f"{folder} does not hold the {reader} layout (expected {expected})")


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DataSource:
    """One data set: where it comes from, under which licence, and how it is laid out.

    Attributes:
        name: Folder under the data root and the name on the command line, e.g. ``"mvtec"``.
        title: Human name, e.g. ``"MVTec AD"``.
        reader: ``build_dataset`` kind that reads the prepared folder: ``mvtec``, ``visa`` or ``folder``.
        licence: Licence, and who states it.
        homepage: Official page (the manual download's starting point).
        prepare: ``(extracted_folder, destination) -> None``.
        url: Direct download URL, or None when a person must download it.
        sha256: Pinned SHA-256 of the archive at ``url`` (None: none published).
        hash_source: Where ``url`` and ``sha256`` were found.
        archive_name: File name of the downloaded archive.
        manual_steps: What a person does when there is no direct URL.
        paper_tables: Where the data set appears in FE-CLIP's paper.
    """

    name: str
    title: str
    reader: str
    licence: str
    homepage: str
    prepare: Callable[[Path, Path], None]
    url: str | None = None
    sha256: str | None = None
    hash_source: str = ""
    archive_name: str = ""
    manual_steps: str = ""
    paper_tables: str = ""

    @property
    def direct(self) -> bool:
        """Whether the data set downloads without a person (a direct URL exists)."""
        return self.url is not None

    def spec(self, root: Path) -> str:
        """``build_dataset`` spec of the prepared set under ``root``, e.g. ``"mvtec:data/mvtec"``."""
        return f"{self.reader}:{root / self.name}"


_ANOMALIB = "open-edge-platform/anomalib src/anomalib/data/datamodules/image/{}.py (DOWNLOAD_INFO, SHA-256)"
_ANOMALYCLIP = "the source AnomalyCLIP's README links, whose protocol FE-CLIP follows"

SOURCES: dict[str, DataSource] = {source.name: source for source in (
    DataSource(
        "mvtec", "MVTec AD", "mvtec", CC_BY_NC_SA + ", as stated in the archive's license.txt",
        "https://www.mvtec.com/company/research/datasets/mvtec-ad", prepare_mvtec_layout,
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
            "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        hash_source=_ANOMALIB.format("mvtecad"), archive_name="mvtec_anomaly_detection.tar.xz",
        paper_tables="Tables 1-2 (evaluated after training on VisA; training set for every other target)"),
    DataSource(
        "visa", "VisA", "visa",
        "CC BY 4.0, as stated in the authors' README (github.com/amazon-science/spot-diff); "
        "anomalib's VisA module states CC BY-NC-SA 4.0",
        "https://github.com/amazon-science/spot-diff", prepare_visa,
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        hash_source=_ANOMALIB.format("visa"), archive_name="VisA_20220922.tar",
        paper_tables="Tables 1-2 (training set for MVTec AD)"),
    DataSource(
        "btad", "BTAD (beanTech Anomaly Detection)", "mvtec", CC_BY_NC_SA + ", as stated by anomalib's BTech module",
        "https://github.com/pankajmishra000/VT-ADL", prepare_mvtec_layout,
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        hash_source=_ANOMALIB.format("btech"), archive_name="btad.zip", paper_tables="Tables 1-2"),
    DataSource(
        "mpdd", "MPDD (Metal Parts Defect Detection)", "mvtec",
        CC_BY_NC_SA + ", as stated by anomalib's MPDD module (the authors' README states none)",
        "https://github.com/stepanje/MPDD", prepare_mvtec_layout,
        manual_steps="the authors share a OneDrive folder (no direct link): open "
                     "https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
                     "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI in a browser and download it as a zip",
        paper_tables="Tables 1-2"),
    DataSource(
        "dagm", "DAGM 2007", "mvtec", "the terms on the download page (not recorded by feclip)",
        "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
        prepare_dagm,
        manual_steps="download the Kaggle upload AnomalyCLIP uses (a Kaggle account is needed): "
                     "https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection "
                     "(or the Class1..Class10 archives from the homepage)",
        paper_tables="Tables 1-2"),
    DataSource(
        "dtd", "DTD-Synthetic", "mvtec", "the terms of its authors (Aota et al., WACV 2023); not recorded by feclip",
        "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1", prepare_mvtec_layout,
        manual_steps="a Google Drive folder (no direct link): open "
                     "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1 and download it; "
                     "pass every zip part Drive produces to --from-archive",
        paper_tables="Tables 1-2"),
    DataSource(
        "brainmri", "BrainMRI (Brain MRI Images for Brain Tumor Detection)", "folder",
        "the terms on its Kaggle page (not recorded by feclip)",
        "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection", prepare_image_folders,
        manual_steps=f"download it from Kaggle (an account is needed), {_ANOMALYCLIP}: "
                     "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
        paper_tables="Table 1 (image level only)"),
    DataSource(
        "br35h", "Br35H (Brain Tumor Detection 2020)", "folder", "the terms on its Kaggle page (not recorded by feclip)",
        "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection", prepare_image_folders,
        manual_steps="download it from Kaggle (an account is needed), the page the paper cites: "
                     "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
        paper_tables="Table 1 (image level only)"),
    DataSource(
        "clinicdb", "CVC-ClinicDB", "mvtec", "the terms on https://polyp.grand-challenge.org/CVCClinicDB/ "
        "(not recorded by feclip)",
        "https://polyp.grand-challenge.org/CVCClinicDB/", prepare_polyp(("CVC-ClinicDB", "ClinicDB", "CVC-612")),
        manual_steps=f"download 'Polyp DataSet.zip' from figshare, {_ANOMALYCLIP}: "
                     "https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579",
        paper_tables="Table 2 (pixel level only)"),
    DataSource(
        "kvasir", "Kvasir-SEG", "mvtec", "the terms on https://datasets.simula.no/kvasir-seg/ (not recorded by feclip)",
        "https://datasets.simula.no/kvasir-seg/", prepare_polyp(("Kvasir", "Kvasir-SEG")),
        manual_steps=f"download 'Polyp DataSet.zip' from figshare, {_ANOMALYCLIP} (its Kvasir test images; the "
                     "full kvasir-seg.zip from the homepage also works, but has no published checksum): "
                     "https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579",
        paper_tables="Table 2 (pixel level only)"),
)}


def get_source(name: str) -> DataSource:
    """The :class:`DataSource` called ``name``; ``ValueError`` listing the known names otherwise."""
    key = name.strip().lower()
    if key not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[key]
