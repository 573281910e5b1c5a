"""What every page's frame needs."""

from django.conf import settings


def site(request) -> dict:
    return {"flower_url": settings.FLOWER_URL}
