"""One tenant's store handles, built together and only for that tenant."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from resources.analysis import get_analyzer
from resources.backends import Backends
from resources.catalog import Catalog
from resources.embedder import Embedder
from resources.keywords import KeywordIndex
from resources.objects import ObjectStore
from resources.ocr import TesseractOcr
from resources.settings import AlienSettings
from resources.tenancy import TenantId, UnknownTenantError
from resources.vectors import VectorIndex


@lru_cache(maxsize=4)
def shared_embedder(model: str, batch_size: int, device: str, worker: bool = True) -> Embedder:
    """The process's embedder (the model is not tenant data, so tenants share it)."""
    return Embedder(model=model, batch_size=batch_size, device=device, worker=worker)


def get_embedder(settings: AlienSettings) -> Embedder:
    return shared_embedder(
        settings.embedding_model,
        settings.embedding_batch_size,
        settings.embedding_device,
        settings.embedding_worker,
    )


_BACKENDS: dict[tuple[tuple[str, str], ...], Backends] = {}
_BACKENDS_LOCK = threading.Lock()


def _backends(settings: AlienSettings) -> Backends:
    """One ``Backends`` (and so one pool per server) per distinct configuration: every
    setting is part of the key, secrets included, so no two configurations share one."""

    def reveal(value: object) -> object:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    key = tuple(
        (name, str(reveal(getattr(settings, name)))) for name in sorted(type(settings).model_fields)
    )
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = Backends(settings)
        return _BACKENDS[key]


@dataclass
class TenantStores:
    """Every store of one tenant. Built only by ``TenantRegistry.open``/``create``."""

    tenant: TenantId
    settings: AlienSettings
    root: Path
    catalog: Catalog
    objects: ObjectStore
    vectors: VectorIndex
    keywords: KeywordIndex
    embedder: Embedder
    ocr: TesseractOcr
    _locks: dict[str, threading.Lock] = field(default_factory=dict)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock for ``name`` across threads and processes on this machine."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(exist_ok=True)
        thread_lock = self._locks.setdefault(name, threading.Lock())
        with thread_lock, path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self.catalog.close()
        self.vectors.close()
        self.keywords.close()


class TenantRegistry:
    """Provisions, opens and retires tenants' embedded stores under ``ALIEN_HOME``."""

    _open: ClassVar[dict[tuple[Path, str], TenantStores]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings
        self.root = settings.tenants_dir
        self.backends = _backends(settings)

    def tenant_dir(self, tenant: TenantId) -> Path:
        """Local state of the tenant: embedded stores and locks (also in cluster mode)."""
        return self.root / TenantId(tenant)

    def exists(self, tenant: str) -> bool:
        tenant = TenantId(tenant)
        return self.backends.exists(tenant, self.tenant_dir(tenant))

    def list(self) -> list[TenantId]:
        return self.backends.tenants(self.root)

    def create(self, tenant: str) -> TenantStores:
        """Provision the tenant's stores (idempotent) and open them."""
        tenant = TenantId(tenant)
        embedder = get_embedder(self.settings)
        self.backends.provision(tenant, embedder.model_name, embedder.dimension)
        stores = self._build(tenant)
        stores.catalog.create()
        return stores

    def forget(self, tenant: str) -> None:
        """Close and drop this process's handles of the tenant (the next use reopens)."""
        with self._guard:
            stores = self._open.pop((self.root, str(TenantId(tenant))), None)
        if stores is not None:
            stores.close()

    def handles(self, tenant: str) -> TenantStores:
        """The tenant's handles without checking that it is provisioned (provisioning only)."""
        return self._build(TenantId(tenant))

    def open(self, tenant: str) -> TenantStores:
        tenant = TenantId(tenant)
        if not self.exists(tenant):
            raise UnknownTenantError(f"unknown tenant {tenant!r}")
        return self._build(tenant)

    def _build(self, tenant: TenantId) -> TenantStores:
        key = (self.root, str(tenant))
        with self._guard:
            cached = self._open.get(key)
            if cached is not None:
                return cached
            root = self.tenant_dir(tenant)
            root.mkdir(parents=True, exist_ok=True)
            embedder = get_embedder(self.settings)
            stores = TenantStores(
                tenant=tenant,
                settings=self.settings,
                root=root,
                catalog=self.backends.catalog(tenant, root),
                objects=self.backends.objects(tenant, root),
                vectors=self.backends.vectors(
                    tenant, root, embedder.model_name, embedder.dimension
                ),
                keywords=self.backends.keywords(
                    tenant, root, get_analyzer(self.settings.stemmer_language)
                ),
                embedder=embedder,
                ocr=TesseractOcr(self.settings.ocr_languages),
            )
            self._open[key] = stores
            return stores

    def drop(self, tenant: str) -> bool:
        """Retire the tenant: close handles and remove every store (idempotent)."""
        tenant = TenantId(tenant)
        with self._guard:
            stores = self._open.pop((self.root, str(tenant)), None)
        if stores is not None:
            stores.close()
        existed = self.exists(tenant) or self.tenant_dir(tenant).exists()
        self.backends.retire(tenant)
        path = self.tenant_dir(tenant)
        shutil.rmtree(path, ignore_errors=True)
        return existed
