from django.urls import path

from migration.views import inventory as views

urlpatterns = [
    path("inventory/", views.inventory_list, name="inventory"),
    path("inventory/export.csv", views.inventory_export, name="inventory_export"),
    path("inventory/<int:mailbox_id>/", views.inventory_mailbox, name="inventory_mailbox"),
]
