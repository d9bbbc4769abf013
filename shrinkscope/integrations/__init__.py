"""Optional integrations with training frameworks. Each module imports its framework on import, so
import the one you need: ``from shrinkscope.integrations.lightning import ShrinkscopeCallback``."""
