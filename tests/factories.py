from __future__ import annotations

import factory
from django.contrib.auth.models import Group

from portal.accounts.models import User
from portal.accounts.roles import ROLE_GROUP_NAMES, Role
from portal.accounts.services import roles_sync

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"person{n}")
    first_name = factory.Faker("first_name", locale="en_GB")
    last_name = factory.Faker("last_name", locale="en_GB")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.gov.uk")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        self.save()
        if extracted:
            roles_sync()  # transactional tests flush the groups the migration made
            self.groups.set(Group.objects.filter(name__in=[ROLE_GROUP_NAMES[Role(r)] for r in extracted]))
