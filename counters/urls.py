from django.urls import path

from . import pages, views

urlpatterns = [
    path("api/counters/<str:key>/incr", views.counter_incr_view, name="counter_incr"),
    path("api/counters/<str:key>", views.counter_get_view, name="counter_get"),
    path("articles/", pages.article_list, name="article_list"),
    path("articles/<slug:slug>/", pages.article_detail, name="article_detail"),
    path("articles/<slug:slug>/like", pages.article_like, name="article_like"),
]
