from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", include("counters.urls")),
    path("", include("orders.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
]
