"""A small JSON API: every view reaches PostgreSQL (through pgmux)."""

import json

from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Book, Trade


def _book(book: Book) -> dict:
    return {
        "id": book.pk,
        "title": book.title,
        "author": book.author,
        "isbn": book.isbn,
        "price": str(book.price),
        "stock": book.stock,
    }


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"service": "booktrader", "books": Book.objects.count()})


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """One round trip to the database."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        (one,) = cur.fetchone()
    return JsonResponse({"database": "ok" if one == 1 else "unexpected"})


@require_GET
def book_list(request: HttpRequest) -> JsonResponse:
    books = Book.objects.annotate(trades_count=Count("trades"))
    return JsonResponse({"books": [dict(_book(b), trades=b.trades_count) for b in books]})


@require_GET
def book_detail(request: HttpRequest, pk: int) -> JsonResponse:
    book = get_object_or_404(Book, pk=pk)
    recent = book.trades.all()[:10]
    return JsonResponse(
        dict(
            _book(book),
            recent_trades=[
                {"side": t.side, "quantity": t.quantity, "price": str(t.price), "at": t.created_at.isoformat()}
                for t in recent
            ],
        )
    )


@csrf_exempt
@require_POST
def trade_create(request: HttpRequest, pk: int) -> JsonResponse:
    """Body: {"side": "buy" | "sell", "quantity": n}. A buy takes stock from
    the shop, a sell brings it back; the row lock serialises traders."""
    try:
        body = json.loads(request.body or b"{}")
        side = body["side"]
        quantity = int(body.get("quantity", 1))
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "expected JSON {\"side\": \"buy\"|\"sell\", \"quantity\": n}"}, status=400)
    if side not in (Trade.BUY, Trade.SELL) or quantity < 1:
        return JsonResponse({"error": "side must be buy or sell, quantity at least 1"}, status=400)
    with transaction.atomic():
        book = get_object_or_404(Book.objects.select_for_update(), pk=pk)
        if side == Trade.BUY and book.stock < quantity:
            return JsonResponse({"error": "not enough stock", "stock": book.stock}, status=409)
        book.stock += quantity if side == Trade.SELL else -quantity
        book.save(update_fields=["stock"])
        trade = Trade.objects.create(book=book, side=side, quantity=quantity, price=book.price)
    return JsonResponse({"trade": trade.pk, "book": _book(book)}, status=201)


@require_GET
def stats(request: HttpRequest) -> JsonResponse:
    totals = Trade.objects.aggregate(
        trades=Count("id"),
        bought=Sum("quantity", filter=Q(side=Trade.BUY), default=0),
        sold=Sum("quantity", filter=Q(side=Trade.SELL), default=0),
    )
    totals["stock"] = Book.objects.aggregate(s=Sum("stock", default=0))["s"]
    return JsonResponse(totals)
