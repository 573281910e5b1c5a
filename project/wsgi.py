import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.base")

application = get_wsgi_application()

# The web signs sessions and password-reset links: refuse to start without a secret (the settings
# leave it empty outside development) rather than fail at the first sign-in.
try:
    settings.SECRET_KEY  # noqa: B018  (Django raises on an empty key when it is read)
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set: the web refuses to start without a secret key "
        "(for development only: DJANGO_DEVELOPMENT=true uses the public development key)."
    ) from exc
