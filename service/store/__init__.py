"""The store: peewee models, migrations and queries. The only package that imports peewee."""
