"""The chart values the e2e steps install with, as `helm --set` arguments.

Kept apart from kube.py (no kubernetes client import) so that the static chart tests
(tests/deploy/test_chart_backup.py) render exactly these values and validate them with
kubeconform: the e2e templates are then known to render before a cluster runs them.
"""

from __future__ import annotations

FULLNAME = "kv"  # fullnameOverride: pods are kv-0, kv-1, kv-2
BACKUP_CLAIM = "e2e-backup"
"""The claim step 10 writes backups to: created by the test, not by the release, so it
survives the release and its data-* claims."""
BACKUP_CRONJOB = f"{FULLNAME}-backup"
RESTORE_JOB = f"{FULLNAME}-restore"


def base_values(repository: str, tag: str, volume_permissions: str) -> list[str]:
    return ["--set", f"fullnameOverride={FULLNAME}",
            "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}",
            "--set", "persistence.size=64Mi",
            "--set", "resources.requests.cpu=50m",
            "--set", "resources.requests.memory=128Mi",
            "--set", "resources.limits.memory=256Mi",
            "--set", "minReadySeconds=2",
            # the host-path provisioner of the local cluster ignores fsGroup
            "--set", f"volumePermissions.enabled={volume_permissions}"]


def backup_values() -> list[str]:
    """Step 10's backup CronJob: on the test's own claim; the schedule never fires during
    the run (the step starts a Job from the CronJob instead)."""
    return ["--set", "backup.enabled=true",
            "--set", f"backup.persistence.existingClaim={BACKUP_CLAIM}",
            "--set-string", "backup.schedule=0 0 1 1 *",
            "--set", "backup.keep=2"]


def restore_values(file: str) -> list[str]:
    """Step 10's restore into the new release, from ``file`` on the backup claim."""
    return ["--set", "restore.enabled=true",
            "--set", f"restore.claimName={BACKUP_CLAIM}",
            "--set-string", f"restore.file={file}",
            "--set", "restore.timeoutSeconds=420"]
