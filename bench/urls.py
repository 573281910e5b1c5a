from django.urls import path

from . import views

urlpatterns = [
    path("bench/naive/<str:key>/incr", views.naive_incr),
    path("bench/lossy/<str:key>/incr", views.lossy_incr),
    path("bench/nocount/<str:key>/incr", views.no_count),
]
