"""No views: the project exists to talk to the database through pgmux."""

urlpatterns: list = []
