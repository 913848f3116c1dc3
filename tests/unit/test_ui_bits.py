"""What the UI shows beyond the job's own figures: the "slurm" kind badge and a link to the job."""

import dagster as dg
import pytest

from dagster_slurm import SLURM_KIND, SlurmResource, SSHConnectionResource, slurm_asset
from dagster_slurm.pipes.client import SlurmJobRequest


def test_slurm_asset_adds_the_badge_bare_and_with_arguments():
    @slurm_asset
    def bare():
        return 1

    @slurm_asset(kinds={"python"}, group_name="g")
    def with_args():
        return 1

    assert bare.specs_by_key[dg.AssetKey("bare")].kinds == {SLURM_KIND}
    spec = with_args.specs_by_key[dg.AssetKey("with_args")]
    assert spec.kinds == {"python", SLURM_KIND} and spec.group_name == "g"


def test_job_url_template():
    slurm = SlurmResource(ssh=SSHConnectionResource(host="h", user="alice"),
                          job_url_template="https://ood.example.org/jobs?id={job_id}&c={cluster}&u={user}")
    assert slurm.job_url("12_3", "hpc") == "https://ood.example.org/jobs?id=12_3&c=hpc&u=alice"
    request = SlurmJobRequest(folder="/f", run_id="r", fingerprint="x", job_name="j", command=["true"], directives={},
                              job_url=lambda job_id: slurm.job_url(job_id, "hpc"))
    link = request.link("7")["slurm_job_url"]
    assert isinstance(link, dg.UrlMetadataValue) and link.url.endswith("id=7&c=hpc&u=alice")
    assert SlurmResource(ssh=SSHConnectionResource(host="h")).job_url("1", "c") is None


def test_job_url_template_with_an_unknown_placeholder_is_an_error():
    with pytest.raises(Exception, match=r"job_url_template .*the placeholders are \{job_id\}, \{cluster\} and \{user\}"):
        SlurmResource(ssh=SSHConnectionResource(host="h"), job_url_template="https://x/{jobid}")
