"""The CLI's command modules, light to import: each loads the library only once its arguments are valid."""
