"""The browser's side of autosave: the last edited model kept in the browser's
localStorage, so that a refresh (or a crashed tab) can offer it back. The code is inline
(no CDN); what the browser hands back is hostile input like any upload (bounded, and
read with Model.from_dict without a folder, so that a data_file is refused)."""
from __future__ import annotations

import param
import panel as pn

KEY = "kn-workbench/autosave"
MAX_CHARS = 4 << 20        # localStorage holds about 5 MB per site


class BrowserStore(pn.custom.JSComponent):
    """`value` (set from Python) is written to localStorage[key] ("" removes it);
    `stored` is what localStorage held when the page opened (set by the browser)."""

    key = param.String(default=KEY)
    value = param.String(default="")
    stored = param.String(default="")
    _esm = """
    export function render({ model }) {
      // handed to Python once the page has settled (a change sent while the session is still
      // being set up can be lost)
      setTimeout(() => {
        try {
          const held = window.localStorage.getItem(model.key);
          if (held) { model.stored = held; }
        } catch (e) { /* storage disabled: no autosave */ }
      }, 500);
      model.on("value", () => {
        try {
          if (model.value) { window.localStorage.setItem(model.key, model.value); }
          else { window.localStorage.removeItem(model.key); }
        } catch (e) { /* over quota or disabled */ }
      });
      const el = document.createElement("span");
      el.style.display = "none";
      return el;
    }
    """
