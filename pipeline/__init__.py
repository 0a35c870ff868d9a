"""The reproduction pipeline: settings (config), data, models, training on Ray, search, evaluation, report."""
