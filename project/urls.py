from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from . import ops_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("ops/", ops_views.ops, name="ops"),
    path("ops/panels", ops_views.ops_panels, name="ops_panels"),
    path("ops/status.json", ops_views.ops_status, name="ops_status"),
    path("ops/dead-letters/replay", ops_views.ops_dead_letters_replay, name="ops_replay"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("counters.urls")),
    path("", include("orders.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
]

if settings.BENCH_VIEWS:  # `make bench` baselines only
    urlpatterns.append(path("", include("bench.urls")))
