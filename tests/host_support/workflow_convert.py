"""Convert a UI-format workflow (what ComfyUI's web UI saves) to the API format the server runs,
using the server's own /object_info for each node's widget order. Test support: the shipped
workflows are converted, never hand-copied, so they cannot drift from the nodes."""
from __future__ import annotations

VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class ConversionError(ValueError):
    pass


def ui_to_api(ui: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode") in (2, 4):   # notes; muted or bypassed nodes
            continue
        if node["type"] not in object_info:
            raise ConversionError(f"node {node['id']}: type {node['type']!r} is not known to the server")
        info = object_info[node["type"]]
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs, vi = {}, 0
        for name in order:
            spec = specs[name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(typ, list) or typ in WIDGET_TYPES:
                value = values[vi] if vi < len(values) else None
                vi += 1
                if typ == "INT" and opts.get("control_after_generate"):
                    vi += 1   # the UI stores "fixed"/"randomize" right after a seed widget
                if name in linked:
                    inputs[name] = [str(linked[name][1]), linked[name][2]]
                elif value is not None:
                    inputs[name] = value
            elif name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        if vi < len(values):
            raise ConversionError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {vi} widgets")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
