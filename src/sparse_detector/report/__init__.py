"""Reports: tables (Markdown / HTML) and the study report."""
