"""The container image must hold every part of the portal that the settings load."""

from __future__ import annotations

import re

from django.conf import settings

from tests.servers import ROOT


def test_the_image_copies_every_portal_application_package():
    copied = set(re.findall(r"^COPY (?!--from)(\S+?)/? ", (ROOT / "Dockerfile").read_text(), flags=re.M))
    local_packages = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    assert local_packages, "no application package found beside manage.py"
    missing = local_packages - copied
    assert not missing, f"the Dockerfile does not copy {sorted(missing)}: collectstatic fails in the build"
