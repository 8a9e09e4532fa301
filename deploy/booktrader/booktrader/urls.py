from django.urls import path

from trading import views

urlpatterns = [
    path("", views.index),
    path("health/", views.health),
    path("books/", views.book_list),
    path("books/<int:pk>/", views.book_detail),
    path("books/<int:pk>/trades/", views.trade_create),
    path("stats/", views.stats),
]
