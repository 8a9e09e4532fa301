"""Run by `manage.py test` (from tests/python/test_django.py), so every query
here, and the creation and removal of the test database, goes through pgmux."""

import threading
from decimal import Decimal

from django.db import IntegrityError, close_old_connections, connection, connections, transaction
from django.db.models import Avg, Count, F, Sum
from django.test import TestCase, TransactionTestCase

from .models import Author, Book


def make_shop() -> None:
    le_guin = Author.objects.create(name="Ursula K. Le Guin")
    lem = Author.objects.create(name="Stanisław Lem")
    Book.objects.create(
        author=le_guin, title="The Dispossessed", isbn="9780061054884",
        price=Decimal("9.99"), stock=3, details={"genre": "sf", "year": 1974},
    )
    Book.objects.create(
        author=le_guin, title="A Wizard of Earthsea", isbn="9780547773742",
        price=Decimal("8.50"), stock=5, details={"genre": "fantasy", "year": 1968},
    )
    Book.objects.create(
        author=lem, title="Solaris", isbn="9780156027601",
        price=Decimal("12.00"), stock=0, details={"genre": "sf", "year": 1961},
    )


class ShopQueries(TestCase):
    """Each test in a transaction (savepoints inside the class's own)."""

    @classmethod
    def setUpTestData(cls) -> None:
        make_shop()

    def test_filters_joins_and_aggregates(self) -> None:
        self.assertEqual(Book.objects.count(), 3)
        titles = list(Book.objects.filter(author__name__startswith="Ursula").values_list("title", flat=True))
        self.assertEqual(titles, ["A Wizard of Earthsea", "The Dispossessed"])
        with self.assertNumQueries(1):
            authors = [b.author.name for b in Book.objects.select_related("author")]
        self.assertEqual(sorted(set(authors)), ["Stanisław Lem", "Ursula K. Le Guin"])
        totals = Book.objects.aggregate(stock=Sum("stock"), price=Avg("price"))
        self.assertEqual(totals["stock"], 8)
        self.assertEqual(totals["price"].quantize(Decimal("0.01")), Decimal("10.16"))
        counts = dict(Author.objects.annotate(n=Count("books")).values_list("name", "n"))
        self.assertEqual(counts, {"Ursula K. Le Guin": 2, "Stanisław Lem": 1})
        self.assertTrue(Book.objects.filter(stock=0).exists())

    def test_json_lookups(self) -> None:
        sf = Book.objects.filter(details__genre="sf").order_by("details__year")
        self.assertEqual([b.title for b in sf], ["Solaris", "The Dispossessed"])

    def test_updates_and_deletes(self) -> None:
        updated = Book.objects.filter(stock__gt=0).update(stock=F("stock") - 1)
        self.assertEqual(updated, 2)
        self.assertEqual(Book.objects.aggregate(s=Sum("stock"))["s"], 6)
        Author.objects.filter(name="Stanisław Lem").delete()
        self.assertEqual(Book.objects.count(), 2)

    def test_integrity_error_rolls_back_to_the_savepoint_only(self) -> None:
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                Author.objects.create(name="Ursula K. Le Guin")
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                Book.objects.filter(title="Solaris").update(stock=-1)
        # The surrounding transaction carries on.
        self.assertEqual(Author.objects.count(), 2)
        self.assertEqual(Book.objects.get(title="Solaris").stock, 0)

    def test_bulk_create_and_iterator_without_server_side_cursors(self) -> None:
        author = Author.objects.get(name="Stanisław Lem")
        Book.objects.bulk_create(
            Book(author=author, title=f"Volume {i:05}", isbn=f"X{i:012}", price=Decimal(i % 50), stock=i % 7)
            for i in range(3000)
        )
        seen = 0
        total_stock = 0
        for book in Book.objects.filter(isbn__startswith="X").iterator(chunk_size=500):
            seen += 1
            total_stock += book.stock
        self.assertEqual(seen, 3000)
        self.assertEqual(total_stock, sum(i % 7 for i in range(3000)))

    def test_select_for_update_and_raw_sql(self) -> None:
        with transaction.atomic():
            book = Book.objects.select_for_update().get(isbn="9780156027601")
            book.stock += 10
            book.save(update_fields=["stock"])
        with connection.cursor() as cur:
            cur.execute("select stock from library_book where isbn = %s", ["9780156027601"])
            self.assertEqual(cur.fetchone(), (10,))
            cur.execute("show timezone")
            self.assertEqual(cur.fetchone(), ("UTC",))
            cur.execute("show application_name")
            self.assertEqual(cur.fetchone(), ("pgmux-e2e-django",))


class CommitsAcrossConnections(TransactionTestCase):
    """Real commits, seen from other connections (other threads), with more
    clients than pgmux has servers."""

    def tearDown(self) -> None:
        close_old_connections()

    def test_atomic_commit_and_rollback(self) -> None:
        make_shop()
        try:
            with transaction.atomic():
                Author.objects.create(name="Nobody")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        committed: list[str] = []
        with transaction.atomic():
            Author.objects.create(name="Somebody")
            transaction.on_commit(lambda: committed.append("yes"))
        self.assertEqual(committed, ["yes"])
        self.assertEqual(self.names_seen_from_another_connection(), ["Somebody", "Stanisław Lem", "Ursula K. Le Guin"])

    def names_seen_from_another_connection(self) -> list[str]:
        out: list[str] = []

        def read() -> None:
            try:
                out.extend(Author.objects.values_list("name", flat=True))
            finally:
                connections.close_all()

        t = threading.Thread(target=read)
        t.start()
        t.join(30)
        self.assertFalse(t.is_alive(), "a second connection hung reading the authors")
        return out

    def test_row_locks_serialise_concurrent_sellers(self) -> None:
        make_shop()
        Book.objects.filter(title="Solaris").update(stock=200)
        sellers, sales_each = 10, 15
        errors: list[BaseException] = []
        start = threading.Barrier(sellers)

        def sell() -> None:
            try:
                start.wait(30)
                for _ in range(sales_each):
                    with transaction.atomic():
                        book = Book.objects.select_for_update().get(title="Solaris")
                        book.stock -= 1
                        book.save(update_fields=["stock"])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=sell) for _ in range(sellers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "a seller hung")
        self.assertEqual(errors, [])
        self.assertEqual(Book.objects.get(title="Solaris").stock, 200 - sellers * sales_each)
