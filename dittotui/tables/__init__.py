"""The console's tables: one live table widget (`live`), its cell renderers (`cells`), the filter's rule (`filter`),
and one module per table holding its columns next to the builder of its rows (`hosts`, `cvms`, `services`)."""
