"""The default approval route: the team's business owners, then a platform admin."""

from django.db import migrations


def create_default_route(apps, schema_editor):
    ApprovalStage = apps.get_model("onboarding", "ApprovalStage")
    if ApprovalStage.objects.exists():
        return
    ApprovalStage.objects.create(
        order=1, name="Business owner", approver_kind="team_owner", sla_hours=48, reason_required=False
    )
    ApprovalStage.objects.create(
        order=2,
        name="Platform admin",
        approver_kind="role",
        role="platform_admin",
        sla_hours=24,
        reason_required=False,
    )


class Migration(migrations.Migration):
    dependencies = [("onboarding", "0001_initial")]

    operations = [migrations.RunPython(create_default_route, migrations.RunPython.noop)]
