"""Reports what the environment holds: example_lib version/variant and injected packages."""
import importlib

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    meta = {}
    for name in ("example_lib", "shared_lib", "workload_lib"):
        try:
            module = importlib.import_module(name)
            meta[name] = f"{module.VERSION}/{getattr(module, 'VARIANT', '')}"
        except ImportError:
            meta[name] = "missing"
    pipes.log.info(f"environment: {meta}")
    pipes.report_asset_materialization(metadata=meta)
