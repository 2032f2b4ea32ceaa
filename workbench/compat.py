"""Panel widget keywords across versions: Panel 1.9 renamed name/button_type/button_style
to label/color/variant (the old ones warn); older Panels only know the old ones."""
from __future__ import annotations


def W(cls, label=None, **kw):
    """cls(**kw) with the label and button styling spelled the way this Panel wants."""
    names = cls.param
    if label is not None:
        kw["label" if "label" in names else "name"] = label
    if "button_type" in kw and "color" in names:
        kw["color"] = kw.pop("button_type")
    if "button_style" in kw and "variant" in names:
        style = kw.pop("button_style")
        kw["variant"] = "solid" if style == "solid" else "outline"
    return cls(**kw)
