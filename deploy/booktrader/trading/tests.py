"""BookTrader's own tests. `manage.py test` runs them through whatever
DB_HOST names, so behind pgmux the test database is created, used and
dropped through the pooler."""

import json
import threading
from decimal import Decimal

from django.db import connections
from django.test import Client, TestCase, TransactionTestCase

from .models import Book, Trade


def make_book(**kw) -> Book:
    fields = {"title": "Solaris", "author": "Stanisław Lem", "isbn": "9780156027601", "price": Decimal("12.00"), "stock": 5}
    fields.update(kw)
    return Book.objects.create(**fields)


class Views(TestCase):
    def setUp(self) -> None:
        Trade.objects.all().delete()
        Book.objects.all().delete()  # the seed migration's books
        self.book = make_book()

    def post_trade(self, side: str, quantity: int, pk: int | None = None):
        return self.client.post(
            f"/books/{pk or self.book.pk}/trades/",
            data=json.dumps({"side": side, "quantity": quantity}),
            content_type="application/json",
        )

    def test_index_health_and_list(self) -> None:
        self.assertEqual(self.client.get("/").json(), {"service": "booktrader", "books": 1})
        self.assertEqual(self.client.get("/health/").json(), {"database": "ok"})
        books = self.client.get("/books/").json()["books"]
        self.assertEqual([(b["title"], b["stock"], b["trades"]) for b in books], [("Solaris", 5, 0)])

    def test_buy_and_sell_move_stock_and_record_trades(self) -> None:
        self.assertEqual(self.post_trade("buy", 2).status_code, 201)
        self.assertEqual(self.post_trade("sell", 1).status_code, 201)
        detail = self.client.get(f"/books/{self.book.pk}/").json()
        self.assertEqual(detail["stock"], 4)
        self.assertEqual([t["side"] for t in detail["recent_trades"]], ["sell", "buy"])
        self.assertEqual(self.client.get("/stats/").json(), {"trades": 2, "bought": 2, "sold": 1, "stock": 4})

    def test_refusals(self) -> None:
        self.assertEqual(self.post_trade("buy", 6).status_code, 409)
        self.assertEqual(self.post_trade("hold", 1).status_code, 400)
        self.assertEqual(self.post_trade("buy", 1, pk=999999).status_code, 404)
        self.assertEqual(self.client.get("/books/999999/").status_code, 404)
        self.assertEqual(self.client.get(f"/books/{self.book.pk}/trades/").status_code, 405)
        self.assertEqual(Trade.objects.count(), 0)

    def test_database_settings_follow_the_contract(self) -> None:
        settings = connections["default"].settings_dict
        self.assertTrue(settings["DISABLE_SERVER_SIDE_CURSORS"])
        self.assertEqual(settings["OPTIONS"]["application_name"], "booktrader")


class ConcurrentTraders(TransactionTestCase):
    """Real commits from several connections at once: the row lock keeps the
    stock exact whatever server each transaction ran on."""

    def test_no_lost_updates(self) -> None:
        Book.objects.all().delete()
        book = make_book(stock=1000)
        traders, each = 8, 10
        errors: list[BaseException] = []
        start = threading.Barrier(traders)

        def trade(side: str) -> None:
            client = Client()
            try:
                start.wait(30)
                for _ in range(each):
                    r = client.post(
                        f"/books/{book.pk}/trades/",
                        data=json.dumps({"side": side, "quantity": 3}),
                        content_type="application/json",
                    )
                    assert r.status_code == 201, r.content
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=trade, args=("buy" if i % 2 else "sell",)) for i in range(traders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "a trader hung")
        self.assertEqual(errors, [])
        book.refresh_from_db()
        self.assertEqual(book.stock, 1000)
        self.assertEqual(Trade.objects.count(), traders * each)
