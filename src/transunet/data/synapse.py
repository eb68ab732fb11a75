"""Facts of the Synapse (BTCV abdomen) and ACDC datasets: label maps, class names and splits.

The raw BTCV labels (13 structures) are mapped to the 8 organs of the preprocessed Synapse data
that the TransUNet authors distribute (label order of their files, not the alphabetical display
order of the paper's tables). The split is the one of the official ``lists/lists_Synapse`` files:
18 training and 12 test cases of the 30 labelled BTCV scans.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Raw BTCV label names, index = raw label value.
BTCV_RAW_NAMES: tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver",
    "stomach", "aorta", "inferior vena cava", "portal and splenic vein", "pancreas",
    "right adrenal gland", "left adrenal gland",
)

#: Class names of the preprocessed Synapse data, index = label value.
SYNAPSE_CLASS_NAMES: tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach",
    "aorta", "pancreas",
)

#: Raw BTCV label -> Synapse label; every raw label not listed maps to 0 (background).
BTCV_TO_SYNAPSE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}

#: Official training cases (BTCV numbering), 2211 axial slices in total.
SYNAPSE_TRAIN_IDS: tuple[str, ...] = (
    "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028",
    "0030", "0031", "0033", "0034", "0037", "0039", "0040",
)

#: Official test cases (BTCV numbering).
SYNAPSE_TEST_IDS: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
)

#: The 30 labelled BTCV ids in numeric order.
BTCV_LABELLED_IDS: tuple[str, ...] = tuple(sorted(SYNAPSE_TRAIN_IDS + SYNAPSE_TEST_IDS))

#: ACDC class names, index = label value.
ACDC_CLASS_NAMES: tuple[str, ...] = ("background", "right ventricle", "myocardium", "left ventricle")

#: CT window of the official Synapse preprocessing, in HU.
CT_WINDOW: tuple[float, float] = (-125.0, 275.0)


def synapse_case_name(btcv_id: str) -> str:
    """``"0001"`` -> ``"case0001"`` (the official preprocessed names)."""
    return f"case{btcv_id}"


def btcv_lut() -> list[int]:
    """Look-up table ``lut[raw] = synapse`` for raw labels 0..13."""
    return [BTCV_TO_SYNAPSE.get(i, 0) for i in range(len(BTCV_RAW_NAMES))]


#: The paper's table columns for the eight Synapse organs (alphabetical display order, by name).
PAPER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("aorta", "Aorta"), ("gallbladder", "Gallbladder"), ("left kidney", "Kidney (L)"),
    ("right kidney", "Kidney (R)"), ("liver", "Liver"), ("pancreas", "Pancreas"),
    ("spleen", "Spleen"), ("stomach", "Stomach"),
)
_ORGAN_ALIASES = {"kidney l": "left kidney", "kidney left": "left kidney", "kidney r": "right kidney",
                  "kidney right": "right kidney", "gall bladder": "gallbladder"}


def _organ_key(name: str) -> str:
    key = " ".join(str(name).lower().replace("_", " ").replace("-", " ").replace("(", " ")
                   .replace(")", " ").split())
    return _ORGAN_ALIASES.get(key, key)


def display_columns(class_names: Sequence[str]) -> list[tuple[int, str]]:
    """Foreground classes in table order as ``(label, header)``.

    The eight Synapse organs are printed in the paper's column order by name (aorta, gallbladder,
    kidney L, kidney R, liver, pancreas, spleen, stomach); any other label set keeps label order.

    Args:
        class_names: Names of labels ``0..K-1`` (index 0 is background).
    """
    fg = [(i, str(n)) for i, n in enumerate(class_names) if i > 0]
    keys = {_organ_key(n): i for i, n in fg}
    if sorted(keys) == sorted(k for k, _ in PAPER_COLUMNS):
        return [(keys[k], header) for k, header in PAPER_COLUMNS]
    return [(i, n[:1].upper() + n[1:]) for i, n in fg]
