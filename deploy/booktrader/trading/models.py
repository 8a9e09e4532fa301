"""Books and the trades made in them."""

from django.db import models


class Book(models.Model):
    title = models.CharField(max_length=300)
    author = models.CharField(max_length=200)
    isbn = models.CharField(max_length=13, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    stock = models.IntegerField(default=0)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="book_stock_not_negative"),
        ]

    def __str__(self) -> str:
        return self.title


class Trade(models.Model):
    BUY = "buy"
    SELL = "sell"
    SIDES = [(BUY, "buy"), (SELL, "sell")]

    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="trades")
    side = models.CharField(max_length=4, choices=SIDES)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=8, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["book", "created_at"], name="trade_book_created")]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} x {self.book_id}"
