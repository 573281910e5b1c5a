from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("ops/", views.ops, name="ops"),
    path("ops/status.json", views.ops_status, name="ops_status"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("counters.urls")),
    path("", include("orders.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
]

if settings.BENCH_VIEWS:  # `make bench` baselines only
    urlpatterns.append(path("", include("bench.urls")))
