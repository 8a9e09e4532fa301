"""A few books to trade, so a fresh deployment has something to show."""

from decimal import Decimal

from django.db import migrations

BOOKS = [
    ("The Dispossessed", "Ursula K. Le Guin", "9780061054884", "9.99"),
    ("A Wizard of Earthsea", "Ursula K. Le Guin", "9780547773742", "8.50"),
    ("Solaris", "Stanisław Lem", "9780156027601", "12.00"),
    ("Kindred", "Octavia E. Butler", "9780807083697", "11.25"),
    ("The Left Hand of Darkness", "Ursula K. Le Guin", "9780441478125", "10.40"),
]
INITIAL_STOCK = 10_000


def seed(apps, schema_editor):
    Book = apps.get_model("trading", "Book")
    for title, author, isbn, price in BOOKS:
        Book.objects.get_or_create(
            isbn=isbn, defaults={"title": title, "author": author, "price": Decimal(price), "stock": INITIAL_STOCK}
        )


def unseed(apps, schema_editor):
    apps.get_model("trading", "Book").objects.filter(isbn__in=[b[2] for b in BOOKS]).delete()


class Migration(migrations.Migration):
    dependencies = [("trading", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
