from django.urls import path

from . import views

urlpatterns = [
    path("api/orders", views.orders_create, name="api_orders_create"),
    path("api/orders/<int:order_id>", views.order_detail, name="api_order_detail"),
    path("api/orders/<int:order_id>/cancel", views.order_cancel, name="api_order_cancel"),
    path("api/accounts/<int:account_id>", views.account_detail, name="api_account_detail"),
    path("api/accounts/<int:account_id>/deposit", views.account_deposit, name="api_deposit"),
    path("shop/", views.shop, name="shop"),
    path("shop/order", views.shop_order, name="shop_order"),
    path("shop/orders/<int:order_id>/", views.shop_order_detail, name="shop_order_detail"),
    path("shop/orders/<int:order_id>/cancel", views.shop_order_cancel, name="shop_order_cancel"),
]
