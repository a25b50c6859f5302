"""The SAE socket type shared by our nodes: it carries an SAESet (with optional dictionary)."""
from comfy_api.latest import io

SAE = io.Custom("SAE")
