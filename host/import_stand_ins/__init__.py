"""Import stand-ins for headless hosting of ComfyUI (the CLI, benchmarks, tests), never inside a server.

ComfyUI v0.8.0 imports torchvision at module level (comfy/model_base.py -> comfy/ldm/cosmos)
for model families this pack never builds. A CPU-only install often has no working
torchvision (the registry's wheel is a CUDA build that fails to import beside the CPU torch),
which would make every in-process use of ComfyUI's model code fail at import. When, and only
when, `import torchvision` fails, `host.comfy_env.import_comfy` puts this folder on sys.path so
that `import torchvision` succeeds with a module whose every attribute access raises: nothing can
silently use it, and a code path that really needs torchvision fails naming it.
"""
