"""An asset check's payload: reports the check on the asset named in the extras."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info(f"checking {pipes.get_extra('asset')}")
    pipes.report_asset_check(check_name="rows_positive", passed=pipes.get_extra("rows") > 0,
                             asset_key=pipes.get_extra("asset"), metadata={"rows": pipes.get_extra("rows")})
