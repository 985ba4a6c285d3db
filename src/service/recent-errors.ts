/**
 * The last few build failures, newest first, for the start page: a user
 * whose `docker pull` failed can see Nix's own words there.
 */
export interface RecentError {
  readonly time: string;
  readonly image: string;
  readonly message: string;
  readonly stderr: string | undefined;
}

export class RecentErrors {
  private readonly items: RecentError[] = [];
  constructor(private readonly capacity = 20) {}

  add(e: RecentError): void {
    this.items.unshift(e);
    if (this.items.length > this.capacity) this.items.length = this.capacity;
  }

  list(): readonly RecentError[] {
    return this.items;
  }
}
