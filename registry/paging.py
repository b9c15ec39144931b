"""Every MLflow search pages to the end: one helper that all callers use.

MLflow answers a search with one page and a token for the next: 100 registered models by default (1,000 at most
per request), 10,000 model versions. A caller that forgets the token acts on the first page as if it were all;
a fleet past 100 tasks then loses tasks without a word. `every` follows the tokens, so a listing costs one
request per page, not one per task.
"""

from collections.abc import Callable, Iterator
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.store.entities.paged_list import PagedList

T = TypeVar("T")

MODELS_PAGE = 1_000  # the most registered models MLflow returns per request
VERSIONS_PAGE = 10_000  # MLflow's default page of model versions (200,000 at most)


def every(search: Callable[..., PagedList[T]], filter_string: str, page_size: int) -> Iterator[T]:
    """Each result of `search(filter_string)`, page after page until MLflow has no next page."""
    token: str | None = None
    while True:
        page = search(filter_string, max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


class Pages:
    """The registry's searches, paged to the end; `page_size` caps each request (tests use small pages)."""

    def __init__(self, client: MlflowClient, page_size: int | None = None):
        self.client = client
        self.models_page = min(page_size or MODELS_PAGE, MODELS_PAGE)
        self.versions_page = min(page_size or VERSIONS_PAGE, VERSIONS_PAGE)

    def models(self, filter_string: str) -> Iterator[RegisteredModel]:
        return every(self.client.search_registered_models, filter_string, self.models_page)

    def versions(self, filter_string: str) -> Iterator[ModelVersion]:
        return every(self.client.search_model_versions, filter_string, self.versions_page)
