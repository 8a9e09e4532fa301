"""A small bookshop: enough variety (foreign keys, unique and check
constraints, decimals, timestamps, JSON) for the ORM to use the usual SQL."""

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=200, unique=True)
    born = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=300)
    isbn = models.CharField(max_length=13, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    stock = models.IntegerField(default=0)
    listed_at = models.DateTimeField(auto_now_add=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["title"]
        indexes = [models.Index(fields=["author", "title"], name="book_author_title")]
        constraints = [
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="book_stock_not_negative"),
        ]

    def __str__(self) -> str:
        return self.title
